"""The jobpool operator: the JobPool custom resource and its kopf reconciler.

``spec`` holds the resource's pydantic models (the one source of its schema), ``crd``
turns them into the CustomResourceDefinition, and ``render`` builds the manifests of a
pool's children (StatefulSet, headless Service, PodDisruptionBudget, ConfigMap) as pure
functions, so they can be tested without a cluster.
"""
