#!/bin/sh
# /usr/bin/sslwall: the command, on the Node.js runtime shipped beside it (Debian 12's nodejs is
# 18; sslwall needs 20). docs/install.md says why.
exec /usr/lib/sslwall/node /usr/lib/sslwall/bin/sslwall.js "$@"
