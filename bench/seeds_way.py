"""The baseline both benchmarks compare against: "the seeds' way" of making a spectrogram image.

The usual notebook/blog recipe: librosa.load → librosa.stft → amplitude_to_db → a matplotlib figure drawn by
librosa.display.specshow (224×224 px, no axes). Callers save the figure (to a file or a buffer) and close it.
"""
import numpy as np


def seeds_figure(path):
    """A matplotlib figure of the clip at ``path``'s spectrogram (n_fft 256, hop 20, dB re max)."""
    import librosa
    import librosa.display
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    y, sr = librosa.load(path, sr=None)
    db = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=256, hop_length=20)), ref=np.max)
    figure = plt.figure(figsize=(2.24, 2.24), dpi=100)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.axis("off")
    librosa.display.specshow(db, sr=sr, hop_length=20, ax=axes)
    return figure
