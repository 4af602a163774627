"""Realistic sample scans built from MNIST test digits, with ground truth (`digitreader synth`)."""

from digitreader.synth.generate import STYLES, Style, generate, load_truth, render_page
from digitreader.synth.mnist import DigitSource, MnistTestDigits

__all__ = ["STYLES", "DigitSource", "MnistTestDigits", "Style", "generate", "load_truth", "render_page"]
