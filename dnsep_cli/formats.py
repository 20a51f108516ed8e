"""The audio file extensions dnsep reads, in one place (no heavy imports: the CLI's help text uses them).

Looked for when an input is a folder (``dnsep enhance``, ``dnsep evaluate``) and in training corpora
(``dnsep train``); soundfile reads each of them.
"""

from __future__ import annotations

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64", ".mp3")
