"""The checks behind `mcp-extproc doctor` (``extproc.cli.doctor``): every part a gateway needs, and per part what
is wrong and how to fix it.

Each check is a plain function returning one ``Check`` (or several); a failing check never stops the others,
except a config that does not load (nothing else can be checked without it). ``setup`` checks what can be checked
before anything runs, ``live`` a running gateway, and ``run`` runs them in order.
"""
