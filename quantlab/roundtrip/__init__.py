"""The files TensorRT's tools write on a GPU host, read (and written) here (design.md §12).

* :mod:`quantlab.roundtrip.polygraphy` - Polygraphy's ``--save-inputs``/``--load-inputs`` and
  ``--save-outputs`` JSON (and the inputs file as a data set, ``--data inputs.json``);
* :mod:`quantlab.roundtrip.trtexec` - ``--exportOutput``, ``--exportProfile``, ``--loadInputs`` binaries;
* :mod:`quantlab.roundtrip.outputs` - an engine's outputs, whichever tool saved them;
* :mod:`quantlab.roundtrip.layers` - ``--exportLayerInfo`` (detailed, names only) and build logs;
* :mod:`quantlab.roundtrip.inspect` - the engine's layers mapped to ONNX nodes, against the plan.

Pure readers and writers over the file formats; holding the engine against FP32 and the emulation
is :mod:`quantlab.evaluation.roundtrip`'s job.
"""
