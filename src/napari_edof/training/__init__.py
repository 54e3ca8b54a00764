"""Training: synthetic focus stacks with ground truth, losses and training loops.

Never imported at run time (``import napari_edof`` does not import it); the CLI's ``train``
command imports it lazily. ``synth``, ``scenes`` and ``datasets`` need only numpy, scipy and
scikit-image; ``train`` and ``losses`` need torch.
"""
