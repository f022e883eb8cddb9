"""uWSGI mule script: the mule is forked from the master, so this import finds the app the
master loaded (and its connection) instead of loading a new one."""

from tests.servers.apps.web import mule_main

mule_main()
