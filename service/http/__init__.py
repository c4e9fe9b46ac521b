"""The HTTP edge: error mapping, request ids and access logs, body limits.

Domain modules never import from here or from FastAPI/Starlette; routers and the app do.
"""
