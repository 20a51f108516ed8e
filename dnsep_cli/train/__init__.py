"""Training a score model: the side job behind `dnsep train`.

trainer.py        the losses, the Trainer (one step, EMA, checkpoints, resume) and the model card it writes
data.py           dynamic mixing of speech and noise, paired folders, the validation set
frontend_pool.py  the cached pool of mixtures with the front-end's estimate, built once for a run
soup.py           a model soup: the weighted mean of the weights of networks fine-tuned from one start
"""
