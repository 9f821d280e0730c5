"""A script written for Contentstack itself, run unchanged against cma-auth-proxy.

It logs in with an account's e-mail, password and two-factor secret, reads the user, creates,
reads, updates and deletes an entry, logs out, and goes on with one more request, as a migration
script or sync job does. Only the host it is given points at the sidecar; the credentials it holds
are not the service account's at all: the proxy answers the login itself and discards them.

    CONTENTSTACK_HOST=127.0.0.1:8080 CONTENTSTACK_SCHEME=http:// CONTENTSTACK_API_KEY=... \
    CONTENTSTACK_EMAIL=... CONTENTSTACK_PASSWORD=... CONTENTSTACK_MFA_SECRET=... python unchanged_test.py

Every step asserts on what the SDK returns; the first failure ends the run with exit status 1.
Run by tests/sdk_python.rs.
"""
import os
import sys
import time

import contentstack_management

env = os.environ
client = contentstack_management.Client(
    host=env["CONTENTSTACK_HOST"], scheme=env.get("CONTENTSTACK_SCHEME", "https://"), timeout=30
)
run = f"{int(time.time())}_{os.getpid()}"


def step(name, check):
    try:
        check()
    except Exception:  # noqa: BLE001 - report every failure the same way
        print(f"FAIL {name}", flush=True)
        raise
    print(f"ok   {name}", flush=True)


def ok(response, status=200):
    assert response.status_code == status, f"HTTP {response.status_code}: {response.text}"
    return response.json()


def login():
    # With mfa_secret the SDK computes the two-factor code and sends it as tfa_token.
    answer = ok(client.login(env["CONTENTSTACK_EMAIL"], env["CONTENTSTACK_PASSWORD"],
                             mfa_secret=env["CONTENTSTACK_MFA_SECRET"]))
    assert answer["user"]["authtoken"] == client.authtoken
    print(f"     logged in as {answer['user']['email']}")


def user():
    assert "@" in ok(client.user().fetch())["user"]["email"]


stack = client.stack(env["CONTENTSTACK_API_KEY"])
ct_uid = f"py_unchanged_{run}"
entry = {}


def create_content_type():
    schema = [{"display_name": "Title", "uid": "title", "data_type": "text",
               "mandatory": True, "unique": True}]
    created = ok(stack.content_types().create(
        {"content_type": {"title": f"Python {run}", "uid": ct_uid, "schema": schema}}), 201)
    assert created["content_type"]["uid"] == ct_uid


def create_entry():
    created = ok(stack.content_types(ct_uid).entry().create({"entry": {"title": f"Hello {run}"}}), 201)
    entry["uid"] = created["entry"]["uid"]


def read_entry():
    fetched = ok(stack.content_types(ct_uid).entry(entry["uid"]).fetch())
    assert fetched["entry"]["title"] == f"Hello {run}"


def update_entry():
    updated = ok(stack.content_types(ct_uid).entry(entry["uid"]).update({"entry": {"title": f"Bye {run}"}}))
    assert updated["entry"]["title"] == f"Bye {run}"
    assert updated["entry"]["_version"] == 2


def delete_entry():
    ok(stack.content_types(ct_uid).entry(entry["uid"]).delete())
    gone = stack.content_types(ct_uid).entry(entry["uid"]).fetch()
    assert gone.status_code in (404, 422), gone.status_code


def logout():
    try:
        response = client.logout()
    except TypeError:
        # contentstack-management 1.11.2's logout() fails before it sends anything
        # (`headers.update[...] = ...`), against Contentstack as much as here. Send the request it
        # means to send, through the SDK's own client.
        response = client.client.delete("user-session", headers=client.client.headers)
    assert ok(response)["notice"] == "You've logged out successfully!"


def still_works():
    user()
    ok(stack.content_types(ct_uid).delete())


for name, check in [
    ("login (e-mail, password, two-factor secret)", login),
    ("get user", user),
    ("create a content type", create_content_type),
    ("create an entry", create_entry),
    ("read the entry", read_entry),
    ("update the entry", update_entry),
    ("delete the entry", delete_entry),
    ("logout", logout),
    ("the next request still works", still_works),
]:
    step(name, check)
print("all steps passed")
sys.exit(0)
