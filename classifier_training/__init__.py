"""Support code of train_classifier.py (script layer: it may use metrics, sampling and training)."""
