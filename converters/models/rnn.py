"""One Keras recurrent layer as a PyTorch module, batch first like Keras: input (N, T, features).

The tables `keras/lstm` and `keras/gru` fill these from a Keras model whose weights are one
`keras.layers.LSTM` / `keras.layers.GRU` (`reset_after=True`, the default since Keras 2.3/tf.keras
2.0). They always carry biases: a Keras layer built with `use_bias=False` then leaves the biases
unfilled and the conversion stops instead of silently giving a different network.
"""
from __future__ import annotations

from torch import nn


class KerasLSTM(nn.Module):
    """`keras.layers.LSTM(hidden_size, return_sequences=...)` on inputs of `input_size` features."""

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = True):
        super().__init__()
        self.return_sequences = return_sequences
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x):
        """(N, T, input_size) -> (N, T, hidden) with return_sequences, else the last step (N, hidden)."""
        out, _ = self.lstm(x)
        return out if self.return_sequences else out[:, -1]


class KerasGRU(nn.Module):
    """`keras.layers.GRU(hidden_size, reset_after=True, return_sequences=...)`."""

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = True):
        super().__init__()
        self.return_sequences = return_sequences
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)

    def forward(self, x):
        out, _ = self.gru(x)
        return out if self.return_sequences else out[:, -1]
