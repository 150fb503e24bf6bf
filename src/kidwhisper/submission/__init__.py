"""Competition submissions: package a model into submission.zip, run it as the runtime would.

`package.package_submission` writes the zip (main.py, the modules inference needs, the
model); `runner.run_submission` unpacks and runs it offline on a runtime-layout data folder
and checks what it wrote; `runner.runtime_layout` turns a manifest into that layout.
"""
