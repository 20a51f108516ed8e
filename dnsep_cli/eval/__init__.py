"""Measuring enhancement: the side job behind `dnsep evaluate` and benchmarks/.

activity.py   active speech level: frame energies, active frames, the SNR on active speech
metrics.py    PESQ, ESTOI, SI-SDR and DNSMOS
evaluate.py   scoring a folder of outputs against references, per file and overall
levels.py     level checks: clipping, silenced speech, anything added to speech-absent input
headroom.py   where a score is lost: frames graded by the reference's level, each grade replaced in turn
"""
