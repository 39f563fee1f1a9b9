"""Judges Panshi's WeChat Pay API v3 signatures with wechatpayv3, a maintained WeChat Pay
SDK for Python (the version pinned in requirements.txt, installed into ./python).
ws-api/tests/sdk.rs runs it: JSON in on stdin, JSON out on stdout.

In: keys (PEM), ids, the order to build notifies for, and the Native request Panshi sent.
Out: the Authorization the SDK builds for that same request (same timestamp and nonce;
PKCS#1 v1.5 is deterministic, so equal fields mean the same message and key), and notify
vectors, each signed with the SDK's rsa_sign as WeChat Pay would and judged by the SDK's
own callback() (signature, then AES-256-GCM decryption), for Panshi to match.

Re-run by hand: tests/sdk/install, then cargo test -p panshi-ws-api --test sdk
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from wechatpayv3 import utils  # noqa: E402
from wechatpayv3.core import Core  # noqa: E402

data = json.load(sys.stdin)
keys, ids = data["keys"], data["ids"]
SCHEME = "WECHATPAY2-SHA256-RSA2048"


def fields(header):
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def request_check(request):
    """The SDK's Authorization for Panshi's request, at Panshi's timestamp and nonce."""
    panshi = fields(request["authorization"])
    real_time = utils.time.time
    utils.time.time = lambda: int(panshi["timestamp"])
    try:
        sdk_header = utils.build_authorization(
            request["path"], request["method"], ids["wechat_mch_id"], panshi["serial_no"],
            utils.load_private_key(keys["wechat_merchant_private"].strip()),
            data=request["body"], nonce_str=panshi["nonce_str"])
    finally:
        utils.time.time = real_time
    sdk = fields(sdk_header)
    return {"panshi": panshi, "sdk": sdk, "equal": sdk == panshi
            and request["authorization"].startswith(SCHEME + " ")}


def notifies(order):
    platform = utils.load_private_key(keys["wechat_platform_private"].strip())
    forger = utils.load_private_key(keys["forger_private"].strip())
    serial = ids["wechat_platform_serial"]
    core = Core(ids["wechat_mch_id"], "unused-merchant-serial", keys["wechat_merchant_private"].strip(),
                keys["wechat_api_v3_key"], public_key=keys["wechat_platform_public"].strip(),
                public_key_id=serial)
    transaction = json.dumps({
        "appid": ids["wechat_app_id"], "mchid": ids["wechat_mch_id"], "out_trade_no": order["order_id"],
        "transaction_id": "4200000000202612020000000001", "trade_type": "NATIVE", "trade_state": "SUCCESS",
        "amount": {"total": order["total"], "payer_total": order["total"], "currency": "CNY",
                   "payer_currency": "CNY"}}, ensure_ascii=False, separators=(",", ":"))

    def envelope(api_key, aad="transaction", nonce="a1b2c3d4e5f6"):
        sealed = AESGCM(api_key.encode()).encrypt(nonce.encode(), transaction.encode(), aad.encode())
        return json.dumps({
            "id": "EV-SDK", "create_time": "2026-12-02T16:00:00+08:00", "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": utils.b64encode(sealed).decode(), "associated_data": "transaction",
                         "nonce": nonce}}, ensure_ascii=False, separators=(",", ":"))

    timestamp = str(int(time.time()))

    def signed(body, key=platform, nonce="SDKNONCE"):
        signature = utils.rsa_sign(key, "%s\n%s\n%s\n" % (timestamp, nonce, body))
        return {"body": body, "timestamp": timestamp, "nonce": nonce, "signature": signature}

    good = envelope(keys["wechat_api_v3_key"])
    cases = [
        ("signed and encrypted as WeChat Pay does", signed(good)),
        ("body changed after signing", dict(signed(good), body=good.replace("EV-SDK", "EV-SDK2"))),
        ("signed with another key", signed(good, key=forger)),
        ("signature over another nonce", dict(signed(good), nonce="OTHERNONCE")),
        ("encrypted with another APIv3 key", signed(envelope("another-apiv3-key-0123456789abcd"))),
        ("encrypted with other associated data", signed(envelope(keys["wechat_api_v3_key"], aad="refund"))),
    ]
    verdicts = []
    for name, notify in cases:
        headers = {"Wechatpay-Timestamp": notify["timestamp"], "Wechatpay-Nonce": notify["nonce"],
                   "Wechatpay-Signature": notify["signature"], "Wechatpay-Serial": serial,
                   "Wechatpay-Signature-Type": SCHEME}
        try:
            accepts = core.callback(headers, notify["body"]) is not None
        except Exception:  # the SDK raises on what it cannot read
            accepts = False
        verdicts.append(dict(notify, name=name, serial=serial, sdk_accepts=accepts))
    return verdicts


json.dump({"wechat_request": request_check(data["requests"]["wechat_native"]),
           "wechat_notifies": notifies(data["orders"]["wechat"])}, sys.stdout, ensure_ascii=False)
