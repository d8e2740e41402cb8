"""The app side of SAAS Explorer: caching, session state, the shared sidebar and UI helpers.

Unlike :mod:`saas` (the UI-free core), this package imports streamlit. One module,
:mod:`saas_app.resources`, owns every ``st.cache_resource`` / ``st.cache_data``.
"""
