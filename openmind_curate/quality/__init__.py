"""Image quality: automatic no-reference metrics, the ratings store, the rater
assignment plan, inter-rater agreement and the Image Quality Score (IQS).
"""
