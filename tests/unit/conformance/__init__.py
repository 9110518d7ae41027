"""The HTTP/1.1 conformance catalogue, run against the proxy and against asgilab (docs/conformance.md).

``catalogue.py`` holds the cases (each with its RFC 9112/9110 section, MUST or SHOULD, and an
Http11Probe category), ``servers.py`` the two servers in-process and the raw-socket client,
``test_catalogue.py`` runs every case against every server it applies to.
"""
