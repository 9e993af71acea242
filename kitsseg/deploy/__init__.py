"""Deployment: model bundles (one file), ONNX export, the ONNX Runtime engine, DICOM SEG output."""
