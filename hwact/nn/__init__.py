"""Trainable layers: HeLU (hwact.nn.helu), logic-gate layers, delta activations."""
