"""Live sources and the real-time classification loop: source parsing, threaded capture, loop, overlay, sinks.

Torch-free: this package runs with numpy, OpenCV and whatever backend the runner uses.
"""
