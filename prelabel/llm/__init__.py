"""The LLM adapter: the engine (`engine`) over the official SDK client (`client`), with its pacing,
a rate limit shared with other workers (`shares`), retry policy, adaptive concurrency, the endpoint's
identity and allowlist, and what it can do (`capabilities`, `probe`).
"""
