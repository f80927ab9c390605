"""Glue between Triton's Python backend and the engine (no algorithms live here).

Request path through ``model_repository/``::

    client --text_input, max_tokens, ...--> ensemble
      preprocessing  (schema.py, preprocessing.py)  text -> input_ids + validated sampling_parameters JSON
      target         (service.py, target.py)        engine thread + response thread; one response per round
                                                     carrying the engine's text delta of the round (stream_text.py)
      postprocessing (postprocessing.py)             passes each chunk on unchanged (no copy); reports cancelled
                                                     chunks to the target (cancel.py)
    <--text_output, num_output_tokens, acceptance_rate, ...--

``draft.py`` hosts a draft model in its own Triton model (its own GPU) that the target reaches
through a direct channel; ``launcher.py`` and ``repository.py`` start ``tritonserver`` from the
pytriton wheel for ``specdec serve``.
"""
