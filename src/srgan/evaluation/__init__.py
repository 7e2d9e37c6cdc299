"""What ``srgan-eval`` measures, as a library (the entry point, :mod:`srgan.evaluate`, only assembles).

- :mod:`.regions`: a model and the baselines over normalised LR / HR regions, in physical units,
  on the pixels that hold data; the spread factor fitted on a calibration split;
- :mod:`.metrics`: PSNR / SSIM / SAM accumulated over tiles, LPIPS per band;
- :mod:`.fidelity`: the opensr-test measures (consistency, synthesis, correctness), ERGAS,
  histogram matching;
- :mod:`.downstream`: spectral indices and thematic-map agreement against HR;
- :mod:`.uncertainty`: sampling (noise draws, ensembles), their mean / std, calibration, and the
  ``uncertainty`` config options (built with Hydra's ``instantiate``);
- :mod:`.report`: the table, the CSV, the MLflow summary; :mod:`.figure`: ``eval.png``.
"""
