"""Live sources and the real-time classification loop: source parsing, threaded capture, the loop (one source or
many, batched), overlay, sinks (window, JSON, recording), the browser view (serve), network outputs (netout) and what
a run needs around the loop (session: several captures, recording timelines, Ctrl-C policy).

Torch-free: this package runs with numpy, OpenCV and whatever backend the runner uses.
"""
