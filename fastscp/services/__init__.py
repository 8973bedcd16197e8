"""The DIMSE service layer: one dispatcher per association plus one module
per DIMSE service (PS3.4).

``dispatcher.Dispatcher`` is what the socket layer drives (``net.seam.Service``):
it answers the association (``acceptance``), turns commands into typed
requests and hands each to its service module: ``verification`` (C-ECHO,
PS3.4 Annex A), ``storage`` (C-STORE, Annex B) and the modules registered in
``ServerState.services`` (query/retrieve, storage commitment). A module sees
the association only through ``session.Session``.
"""
