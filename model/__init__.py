"""The classifier: ResNet50, preprocessing to tensors, the checkpoint format and inference."""
