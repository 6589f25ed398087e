"""The kubetune operator (Kopf): validated spec -> pure builders -> thin handlers -> pure status."""
