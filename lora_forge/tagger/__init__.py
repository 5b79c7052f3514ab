"""WD14 tagging (SmilingWolf's v2/v3 ONNX models): captions for a whole dataset.

registry: which models exist, where their files are, download; session: onnxruntime with the best
provider; preprocess/labels: the reference preprocessing and the caption rules; batch.tag_folder:
the run over a folder; testing: a tiny WD14-shaped graph for the selftest and the tests.
"""
