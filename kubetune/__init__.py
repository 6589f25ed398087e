"""kubetune: Kubernetes-native LoRA transfer learning (api models + CLI).

Import names: ``kubetune`` (api, cli), ``kubetune_operator`` (operator/), ``kubetune_trainer`` (trainer/).
"""

__version__ = "0.1.0"
