"""What every method shares: argument checks, the runtime switches, the model-state helper and the
one training loop. Private: the public faces are ``xnn_lab`` (``fit``, ``evaluate``, ``predict``,
``device``, ...) and the method subpackages."""
