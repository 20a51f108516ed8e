"""Measuring enhancement: the side job behind `dnsep evaluate` and benchmarks/.

metrics.py    PESQ, ESTOI, SI-SDR and DNSMOS
evaluate.py   scoring a folder of outputs against references, per file and overall
levels.py     level checks: clipping, silenced speech, anything added to speech-absent input
"""
