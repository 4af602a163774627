"""The pipeline, one stage per module:

- `load`       file -> pages (`PageImage`), typed errors for bad files
- `prepare`    deskew, illumination correction, binarization (`PreparedPage`)
- `fields`     find box (comb) and string fields (`FieldRegion`)
- `cut`        cut each field into digit slots (box cells, a string's window), blank test
- `split`      a string field's ink -> one piece per digit (geometry, then the splitter model)
- `normalize`  crop -> 28x28 MNIST form (shared with `digitreader predict` and training)
- `orient`     a page upside down or on its side: which way up its digits read (`PageCut.rotation`)
- `segment`    one call per page: prepare -> fields -> cut -> normalize, turned upright (`PageCut`)
- `recognize`  ONNX model in batches -> labels, calibrated confidences
- `assemble`   recognized digits -> field values and review flags
- `document`   one document: load -> segment every page -> field strips (`DocumentCut`)
- `process`    documents -> database (the embedded pipeline; workers reuse its functions)
- `report`     what a batch run reports (progress hook, document and batch reports)
"""
