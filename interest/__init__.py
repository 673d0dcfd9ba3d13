"""User side: decayed profiles, the correction network, training, offline evaluation.

Never imports Flask.
"""
