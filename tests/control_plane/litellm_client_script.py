"""Run by LiteLLM's own Python (the peer install, bench/.peers/litellm), not by the test suite's.

Calls ``litellm.proxy.client`` (LiteLLM's Python client) against the gateway at ``$LITELLM_PROXY_URL``
with ``$LITELLM_PROXY_API_KEY``, one call per line read on stdin (``{"call": "keys.generate",
"kwargs": {...}}``), answering each with one JSON line on stdout: ``{"ok": <the client's return>}``,
or ``{"error": ..., "status": ...}`` with what the client raised.
"""

import json
import os
import sys

import requests
from litellm.proxy.client import Client
from litellm.proxy.client.users import UsersManagementClient


def main() -> None:
    url, key = os.environ["LITELLM_PROXY_URL"], os.environ["LITELLM_PROXY_API_KEY"]
    client = Client(base_url=url, api_key=key)
    users = UsersManagementClient(base_url=url, api_key=key)
    calls = {
        "keys.generate": client.keys.generate,
        "keys.info": client.keys.info,
        "keys.list": client.keys.list,
        "keys.update": client.keys.update,
        "keys.delete": client.keys.delete,
        "teams.list": client.teams.list,
        "teams.list_v2": client.teams.list_v2,
        "users.create_user": users.create_user,
        "users.get_user": users.get_user,
        "users.get_user_v2": users.get_user_v2,
        "users.list_users": users.list_users,
        "users.delete_user": users.delete_user,
        "http.request": client.http.request,
    }
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": calls[request["call"]](**request.get("kwargs", {}))}
        except requests.exceptions.HTTPError as exc:
            answer = {"error": str(exc), "status": getattr(exc.response, "status_code", None)}
        except Exception as exc:  # the client failing to read an answer is what the test looks for
            answer = {"error": f"{type(exc).__name__}: {exc}", "status": None}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()


main()
