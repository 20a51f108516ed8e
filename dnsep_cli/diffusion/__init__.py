"""The mathematics of score-based enhancement: what the sampler stage and the trainer are built from.

sde.py             the forward SDEs (OUVE of SGMSE+, VE, VP) and their reverse, behind one interface
sampling.py        predictors, correctors, the predictor-corrector sampler and the probability-flow ODE
score_matching.py  denoising score matching: perturbing x0 to x_t and the loss on the score
ddpm.py            DDPM/IDDPM (Ho et al. 2020, Nichol & Dhariwal 2021) and the importance sampler of t
"""
