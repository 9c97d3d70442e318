// An AegisIPC client in Node.js, written from docs/protocol.md alone (npm: nats,
// @msgpack/msgpack). Usage: node client.mjs NATS_URL
// It makes a durable call (a decimal and a Date), a direct call, and publishes an event,
// then prints one JSON object with what came back.
import { connect, createInbox, headers } from "nats";
import { decode, encode, ExtensionCodec } from "@msgpack/msgpack";

const url = process.argv[2];
const prefix = "ipc";
const text = new TextEncoder();
const untext = new TextDecoder();

// §5: decimals travel as ext 1 with their exact text; datetimes come back as ext 2 (ISO
// text); a JS Date goes out as MessagePack's standard timestamp (-1), which receivers
// accept as a UTC datetime.
class Decimal {
  constructor(digits) {
    this.digits = digits;
  }
}
const codec = new ExtensionCodec();
codec.register({
  type: 1,
  encode: (value) => (value instanceof Decimal ? text.encode(value.digits) : null),
  decode: (data) => new Decimal(untext.decode(data)),
});
codec.register({ type: 2, encode: () => null, decode: (data) => untext.decode(data) });
const pack = (value) => encode(value, { extensionCodec: codec });
const unpack = (data) => decode(data, { extensionCodec: codec });
const plain = (value) =>
  JSON.parse(JSON.stringify(value, (_, v) => (v instanceof Decimal ? v.digits : v)));

const newId = () => `node${Date.now().toString(16)}${Math.random().toString(16).slice(2, 10)}`;
const deadline = (seconds) => Date.now() / 1000 + seconds;

function result(reply) {
  // §4 CallReply: exactly one of payload and error.
  if (reply.error) throw new Error(`${reply.error.code}: ${reply.error.message}`);
  return reply.payload == null ? null : unpack(reply.payload);
}

const nc = await connect({ servers: url });
const js = nc.jetstream();
const out = {};

// §8.1 durable call: subscribe a reply address, publish through JetStream with
// Nats-Msg-Id and Ipc-Reply-To, wait for the CallReply there.
{
  const callId = newId();
  const replyTo = createInbox();
  const sub = nc.subscribe(replyTo, { max: 1 });
  const h = headers();
  h.set("Ipc-Reply-To", replyTo);
  const order = {
    account: "acc_node",
    quantity: 3,
    price: new Decimal("187.2500"),
    placed_at: new Date(Date.UTC(2026, 10, 28, 9, 30, 0, 123)),
  };
  const request = {
    v: 1,
    call_id: callId,
    service: "conformance",
    method: "book",
    payload: pack(order),
    deadline: deadline(10),
    reply_to: replyTo,
    caller: "node",
  };
  // The caller's name is the subject's last token (the router goes by it, never the body).
  const ack = await js.publish(`${prefix}.call.conformance.book.node`, pack(request), {
    msgID: `node.${callId}`,
    headers: h,
  });
  for await (const msg of sub) {
    out.durable = { call_id: callId, stream: ack.stream, result: plain(result(unpack(msg.data))) };
  }
}

// §8.2 direct call: find the active in the registry bucket, request its direct subject
// (its inbox plus ".d"; the inbox itself is the router's) with
// direct: true and its epoch.
{
  const registry = await js.views.kv(`${prefix.toUpperCase()}_REGISTRY`);
  let target = null;
  for await (const key of await registry.keys("conformance.*")) {
    const entry = await registry.get(key);
    if (!entry || entry.value.length === 0) continue;
    const record = unpack(entry.value);
    if (
      record.role === "active" &&
      record.health === "healthy" &&
      record.direct &&
      !record.draining &&
      record.methods.includes("quote")
    ) {
      target = record;
    }
  }
  if (!target) throw new Error("no instance takes direct calls for conformance.quote");
  const request = {
    v: 1,
    call_id: newId(),
    service: "conformance",
    method: "quote",
    payload: pack({ symbol: "AAPL" }),
    deadline: deadline(5),
    caller: "node",
    epoch: target.epoch,
    direct: true,
  };
  const subject = `${prefix}.inst.conformance.${target.instance_id}.${target.session}.d`;
  const msg = await nc.request(subject, pack(request), { timeout: 5000 });
  const refused = msg.headers ? msg.headers.get("Ipc-Refused") : "";
  out.direct = { instance: target.instance_id, refused, result: plain(result(unpack(msg.data))) };
}

// §8.4 publish: a Published envelope through JetStream, Nats-Msg-Id = event_id.
{
  const eventId = newId();
  const topic = "conformance.ticks.AAPL";
  const event = {
    v: 1,
    topic,
    payload: pack({ symbol: "AAPL", price: new Decimal("187.0001"), at: new Date(0) }),
    event_id: eventId,
    published_at: Date.now() / 1000,
    publisher: "node",
  };
  const ack = await js.publish(`${prefix}.pub.${topic}`, pack(event), { msgID: eventId });
  out.published = { event_id: eventId, seq: ack.seq };
}

await nc.drain();
process.stdout.write(JSON.stringify(out) + "\n");
