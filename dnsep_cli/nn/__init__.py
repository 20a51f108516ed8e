"""The network parts: score backbones and the mechanisms they are made of.

backbones/      score networks by registry name (osa_unet, the shipped one; ncsnpp, SGMSE+'s)
osa.py          OSA-RES-eSE blocks (one-shot aggregation, residual, effective squeeze-excitation)
tac.py          transform-average-concatenate across microphone channels
deepfilter.py   DfOp: complex multi-frame deep filtering; multi-frame Wiener and MVDR filters
postfilter.py   the DeepFilter post-filter that refines the sampler's estimate
"""
