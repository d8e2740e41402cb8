"""SAAS: Semantic-Aware Activation Steering. The core library (never imports streamlit)."""

__version__ = "0.1.0"
