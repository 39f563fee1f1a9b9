// Judges Panshi's Alipay signatures with Alipay's official Node.js SDK, alipay-sdk (the
// version pinned in package.json; wechat.py does the same for WeChat Pay).
// ws-api/tests/sdk.rs runs it: JSON in on stdin, JSON out on stdout.
//
// In: keys (PEM), ids, the orders to build notifies for, and the requests Panshi sent.
// Out: for each request Panshi signed, the signature the SDK computes for the same content
// (PKCS#1 v1.5 is deterministic, so equal means the same content and key); and notify and
// answer vectors, each with the SDK's own verdict, for Panshi to match.
//
// Re-run by hand: tests/sdk/install, then cargo test -p panshi-ws-api --test sdk
'use strict';
const crypto = require('node:crypto');
const { AlipaySdk } = require('alipay-sdk');

const input = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const { keys, ids } = input;
const rsaSign = (key, text) => crypto.createSign('RSA-SHA256').update(text, 'utf8').sign(key, 'base64');

function alipaySdk(privateKey) {
  return new AlipaySdk({
    appId: ids.alipay_app_id,
    privateKey: privateKey.trim(),
    alipayPublicKey: keys.alipay_gateway_public.trim(),
  });
}

// The SDK's signature for the parameters of Panshi's signed page URL.
function alipayRequest(url) {
  const params = Object.fromEntries(new URL(url).searchParams);
  const { method, sign, biz_content: biz, sign_type: _t, app_id: _a, charset: _c, version: _v, ...rest } = params;
  const query = alipaySdk(keys.alipay_app_private).sdkExecute(method, { ...rest, bizContent: JSON.parse(biz) });
  const sdkSign = new URLSearchParams(query).get('sign');
  return { panshi_sign: sign, sdk_sign: sdkSign, equal: sign === sdkSign };
}

// Alipay notifies: signed here as Alipay signs them (the SDK has no API to sign one),
// judged by the SDK's checkNotifySignV2 (values as the form decoded them).
function alipayNotifies(order) {
  const sdk = alipaySdk(keys.alipay_app_private);
  const base = {
    app_id: ids.alipay_app_id, out_trade_no: order.order_id, trade_no: '2026120222001400000001',
    total_amount: order.amount, trade_status: 'TRADE_SUCCESS', notify_time: '2026-12-02 16:00:00',
    subject: 'Steam 卡 100% a+b & c=d', charset: 'utf-8', sign_type: 'RSA2',
  };
  const content = (p, withSignType) => Object.keys(p).filter(k => k !== 'sign' && (withSignType || k !== 'sign_type'))
    .sort().map(k => `${k}=${p[k]}`).join('&');
  const signed = (p, key, withSignType = false) => ({ ...p, sign: rsaSign(key, content(p, withSignType)) });
  const other = keys.forger_private;
  const cases = [
    ['as Alipay signs it, without sign_type', signed(base, keys.alipay_gateway_private)],
    ['signed with sign_type (rsaCheckV2 form)', signed(base, keys.alipay_gateway_private, true)],
    ['an empty parameter signed as k=', signed({ ...base, passback_params: '' }, keys.alipay_gateway_private)],
    ['an empty parameter left out of the content', { ...signed(base, keys.alipay_gateway_private), passback_params: '' }],
    ['amount changed after signing', { ...signed(base, keys.alipay_gateway_private), total_amount: '0.01' }],
    ['a parameter added after signing', { ...signed(base, keys.alipay_gateway_private), extra: 'x' }],
    ['signed with another key', signed(base, other)],
    ['no sign', base],
    ['sign not base64', { ...base, sign: '!!not base64!!' }],
  ];
  return cases.map(([name, params]) => ({
    name, form: new URLSearchParams(params).toString(), sdk_accepts: sdk.checkNotifySignV2({ ...params }),
  }));
}

// An Alipay answer: the SDK's checkResponseSign over the raw text.
function alipayAnswers(order) {
  const sdk = alipaySdk(keys.alipay_app_private);
  const key = 'alipay_trade_query_response';
  const object = JSON.stringify({ code: '10000', msg: 'Success', out_trade_no: order.order_id,
    trade_no: '2026120222001400000001', trade_status: 'TRADE_SUCCESS', total_amount: order.amount });
  const body = (obj, sign) => `{"${key}":${obj},"sign":"${sign}"}`;
  const good = rsaSign(keys.alipay_gateway_private, object);
  const cases = [
    ['signed by Alipay', body(object, good)],
    ['amount changed after signing', body(object.replace(order.amount, '0.01'), good)],
    ['signed with another key', body(object, rsaSign(keys.forger_private, object))],
    ['spaces around the object, as some proxies reformat', `{"${key}": ${object} ,"sign":"${good}"}`],
  ];
  return cases.map(([name, text]) => {
    let accepts = true;
    try { sdk.checkResponseSign(text, key, JSON.parse(text).sign); } catch { accepts = false; }
    return { name, body: text, response_key: key, sdk_accepts: accepts };
  });
}

(async () => {
  const output = {
    alipay_request: alipayRequest(input.requests.alipay_page_url),
    alipay_notifies: alipayNotifies(input.orders.alipay),
    alipay_answers: alipayAnswers(input.orders.alipay),
  };
  process.stdout.write(JSON.stringify(output));
})().catch(error => { console.error(error); process.exit(1); });
