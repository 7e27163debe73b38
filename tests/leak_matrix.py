"""The planted secrets of the redaction leak matrix, and the traffic that carries them.

Each secret is distinct and stands where real clients and servers put one: request headers of
every auth style, query strings (`&` and `;`), form and multipart fields, JSON keys at any depth
and in every naming style, credential formats inside prompt text, and the server's own cookies,
token headers and keys. `send_all` sends them through a proxy to the mock gateway's echo endpoint
(which returns headers, query and body) as JSON and as an event stream, coded and not, and to the
chat endpoint, streamed and not.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.request
from urllib.parse import quote

PEM_BODY = "MIIEpAIBAAKCAQEAleakPemKeyMaterial0123456789abcdefghijklmnopqrstuvwxyzAB"

HEADERS = {
    "h_bearer": "sk-proj-LEAKbearerheader0000000000000000",
    "h_plain_auth": "LEAKauthplainvalue0001",
    "h_token_auth": "ghp_" + "LEAKgithubtokenheader".ljust(36, "0"),
    "h_basic_pass": "LEAKbasicpassword01",
    "h_digest": "LEAKdigestresponse0000",
    "h_aws_sig": "leak0aws0signature0000000000000000000000000000000000000000000000a",
    "h_x_api_key": "LEAKxapikeyvalue0000",
    "h_api_key": "LEAKapikeyheader0000",
    "h_x_auth_token": "LEAKxauthtoken000000",
    "h_goog": "AIzaLEAKgoogleapikeyheader0000000000",
    "h_amz_token": "LEAKamzsecuritytoken0000",
    "h_apim": "LEAKapimsubscription0000",
    "h_cookie": "LEAKcookiesession0000",
    "h_custom": "LEAKcustomheader0000",
}
QUERY = {
    "q_api_key": "LEAKqueryapikey00000",
    "q_key": "LEAKquerykey00000000",
    "q_token": "LEAKquerytoken000000",
    "q_access_token": "LEAKqueryaccesstoken0",
    "q_amz_sig": "leakamzsignature000000000000000000000000000000000000000000000000",
    "q_oauth_code": "LEAKoauthcode0000000",
    "q_sas_sig": "LEAKsassig0000000000",
    "q_client_secret": "LEAKqueryclientsecret",
    "q_semicolon_pwd": "LEAKsemicolonpwd0000",
}
FORM = {
    "f_password": "LEAKformpassword0000",
    "f_api_key": "LEAKformapikey000000",
    "f_client_secret": "LEAKformclientsecret0",
    "f_refresh": "LEAKformrefreshtoken0",
}
MULTIPART = {
    "m_password": "LEAKmultipartpass000",
    "m_token": "LEAKmultiparttoken00",
    "m_file_aws": "AKIALEAKMULTIPART000",
}
JSON_KEYS = {
    "j_pwd": "LEAKjsonpwd000000000",
    "j_auth_token": "LEAKjsonauthtoken000",
    "j_deep_api_key": "LEAKjsondeepapikey00",
    "j_camel_secret": "LEAKjsoncamelsecret0",
    "j_header_style": "LEAKjsonheaderstyle0",
    "j_password": "LEAKjsonpassword0000",
    "j_private_key": "LEAKjsonprivatekey00",
    "j_credentials": "LEAKjsoncredentials0",
    "j_tool_args": "LEAKtoolargspassword",
}
TEXT = {
    "t_sk_proj": "sk-proj-LEAKpromptopenai000000000000",
    "t_sk_ant": "sk-ant-api03-LEAKpromptanthropic0000000",
    "t_aws_id": "AKIALEAKPROMPT000000",
    "t_aws_secret": "LEAKawssecretkey/0000000000000000000000A",
    "t_jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJMRUFLand0In0.LEAKjwtsignature00000000000000000000",
    "t_github": "ghp_" + "LEAKgithubtokenprompt".ljust(36, "0"),
    "t_gitlab": "glpat-LEAKgitlabtoken000000",
    "t_slack": "xoxb-1234567890-1234567890-leakslacktoken000",
    "t_stripe": "sk_live_" + "LEAKstripekey".ljust(24, "0"),
    "t_google": "AIzaLEAKgoogleapikeyprompt0000000000",
    "t_pem": PEM_BODY,
    "t_url_password": "LEAKurlpassword00",
    "t_bearer": "LEAKtextbearertoken0000",
    "t_hf": "hf_LEAKhuggingfacetoken00000000000000",
    "t_telegram": "123456789:" + "AALEAKtelegram".ljust(35, "0"),
    "t_kv_password": "LEAKkvpassword000",
}
SERVER = {"s_amz_header": "LEAKserveramztoken000"}  # the cookies and keys it issues are added
BASIC = {
    "h_basic_credential": base64.b64encode(f"deploy:{HEADERS['h_basic_pass']}".encode()).decode()
}

SECRETS = {**HEADERS, **BASIC, **QUERY, **FORM, **MULTIPART, **JSON_KEYS, **TEXT, **SERVER}


def prompt_text() -> str:
    t = TEXT
    return (
        f"Here is my config. OPENAI={t['t_sk_proj']} and anthropic {t['t_sk_ant']}.\n"
        f"[default]\naws_access_key_id = {t['t_aws_id']}\n"
        f"aws_secret_access_key = {t['t_aws_secret']}\n"
        f"token {t['t_jwt']} gh {t['t_github']} gl {t['t_gitlab']} slack {t['t_slack']}\n"
        f"stripe {t['t_stripe']} google {t['t_google']} hf {t['t_hf']} tg {t['t_telegram']}\n"
        f"-----BEGIN RSA PRIVATE KEY-----\n{t['t_pem']}\n-----END RSA PRIVATE KEY-----\n"
        f"clone https://deploy:{t['t_url_password']}@git.example.com/repo.git\n"
        f"curl -H 'Authorization: Bearer {t['t_bearer']}'\n"
        f"db password: {t['t_kv_password']}\n"
        "Why does my deploy fail?"
    )


def json_body(model: str = "small") -> dict[str, object]:
    j = JSON_KEYS
    return {
        "model": model,
        "max_tokens": 4,
        "pwd": j["j_pwd"],
        "auth_token": j["j_auth_token"],
        "config": {"deep": [{"nested": {"API_KEY": j["j_deep_api_key"]}}]},
        "clientSecret": j["j_camel_secret"],
        "X-Api-Key": j["j_header_style"],
        "password": j["j_password"],
        "private_key": j["j_private_key"],
        "credentials": {"secret": j["j_credentials"]},
        "tool_call": {"arguments": json.dumps({"password": j["j_tool_args"], "n": 1})},
        "messages": [{"role": "user", "content": prompt_text()}],
    }


def _req(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def send_all(base: str) -> int:
    """Every secret through the proxy at `base`; the number of requests sent."""
    h = HEADERS
    basic = BASIC["h_basic_credential"]
    aws = (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host, Signature={h['h_aws_sig']}"
    )
    echo = f"{base}/echo/h?body=1"
    header_sets = [
        {"Authorization": f"Bearer {h['h_bearer']}", "X-Custom-Secret": h["h_custom"]},
        {"AUTHORIZATION": h["h_plain_auth"], "x-API-key": h["h_x_api_key"]},
        {"Authorization": f"token {h['h_token_auth']}", "Api-Key": h["h_api_key"]},
        {"Authorization": f"Basic {basic}", "X-Auth-Token": h["h_x_auth_token"]},
        {"Proxy-Authorization": f'Digest username="u", response="{h["h_digest"]}"'},
        {"Authorization": aws, "X-Goog-Api-Key": h["h_goog"]},
        {"X-Amz-Security-Token": h["h_amz_token"], "Ocp-Apim-Subscription-Key": h["h_apim"]},
        {"Cookie": f"theme=dark; session={h['h_cookie']}"},
    ]
    n = 0
    for hs in header_sets:
        _req(echo, headers=hs)
        _req(echo + "&sse=1", headers=hs)
        n += 2
    q = QUERY
    query = (
        f"api_key={q['q_api_key']}&key={q['q_key']}&Token={q['q_token']}"
        f"&access_token={q['q_access_token']}&X-Amz-Signature={q['q_amz_sig']}"
        f"&code={q['q_oauth_code']}&sig={q['q_sas_sig']}&client_secret={q['q_client_secret']}"
        f";pwd={q['q_semicolon_pwd']};size_hint=1"
    )
    _req(f"{base}/echo/q?{query}")
    _req(f"{base}/echo/q?sse=1&{query}")
    f = FORM
    form = (
        f"user=bob&password={quote(f['f_password'])}&api_key={f['f_api_key']}"
        f"&client_secret={f['f_client_secret']}&refresh_token={f['f_refresh']}"
    )
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    _req(f"{base}/echo/form?body=1", form.encode(), ctype)
    m = MULTIPART
    boundary = "leakboundary123"
    parts = [
        ("user", None, "bob"),
        ("password", None, m["m_password"]),
        ("token", None, m["m_token"]),
        ("upload", "creds.txt", f"[default]\naws_access_key_id={m['m_file_aws']}\n"),
    ]
    mp = (
        "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
            + (f'; filename="{fn}"' if fn else "")
            + f"\r\n\r\n{value}\r\n"
            for name, fn, value in parts
        )
        + f"--{boundary}--\r\n"
    )
    mp_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    _req(f"{base}/echo/mp?body=1", mp.encode(), mp_type)
    n += 4
    body = json.dumps(json_body()).encode()
    js = {"Content-Type": "application/json"}
    for knobs in (
        "body=1",
        "body=1&sse=1",
        "body=1&enc=gzip",
        "body=1&enc=br",
        "body=1&sse=1&enc=zstd",
    ):
        _req(f"{base}/echo/json?{knobs}", body, js)
        n += 1
    _req(f"{base}/echo/json?body=1", gzip.compress(body), {**js, "Content-Encoding": "gzip"})
    n += 1
    for stream in (False, True):
        chat = json.dumps({**json_body(), "stream": stream}).encode()
        _req(f"{base}/v1/chat/completions", chat, js)
        n += 1
    server = f"header=X-Amz-Security-Token:{SERVER['s_amz_header']}"
    _req(f"{base}/echo/s?issue_key=1&set_cookie=1&{server}")
    _req(f"{base}/echo/s?issue_key=1&set_cookie=1&sse=1&{server}")
    return n + 2


def forms_of(secret: str) -> list[str]:
    """The forms a secret is searched for in: raw, URL-encoded and base64."""
    return [secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()]


def hits(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, s in secrets.items() if any(f in text for f in forms_of(s))]
