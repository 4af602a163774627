"""The pipeline, one stage per module:

- `load`       file -> pages (`PageImage`), typed errors for bad files
- `prepare`    deskew, illumination correction, binarization (`PreparedPage`)
- `fields`     find box (comb) and string fields (`FieldRegion`)
- `cut`        cut each field into digit slots, blank test
- `normalize`  crop -> 28x28 MNIST form (shared with `digitreader predict` and training)
- `segment`    one call per page: prepare -> fields -> cut -> normalize (`PageCut`)
- `recognize`  ONNX model in batches -> labels, calibrated confidences
- `assemble`   recognized digits -> field values and review flags
- `process`    documents -> database (the embedded pipeline; workers reuse its functions)
"""
