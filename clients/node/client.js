#!/usr/bin/env node
// Calling a servegraph router from Node.js with @grpc/grpc-js and @grpc/proto-loader.
//
//   node client.js 127.0.0.1:50051 invoke '{"question": "hi"}'
//   node client.js 127.0.0.1:50051 stream '{"n": 3}'     # one JSON line per chunk, as it arrives
//   node client.js 127.0.0.1:50051 describe
//
// On a failed call it prints "ERROR <CODE_NAME> <details>" to stderr and exits with status 1.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');

// google/protobuf/struct.proto is resolved from protobufjs's bundled well-known types.
const definition = protoLoader.loadSync('servegraph/v1/graph.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true, // sets `kind` on each google.protobuf.Value to the name of the field it holds
});
const { Graph } = grpc.loadPackageDefinition(definition).servegraph.v1;

// google.protobuf.Value <-> plain JS. The bundled well-known types keep protobufjs's camelCase
// field names (numberValue, structValue, ...) even with keepCase.
function toValue(x) {
  if (x === null || x === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof x === 'boolean') return { boolValue: x };
  if (typeof x === 'number') return { numberValue: x };
  if (typeof x === 'string') return { stringValue: x };
  if (Array.isArray(x)) return { listValue: { values: x.map(toValue) } };
  return { structValue: toStruct(x) };
}

function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([key, item]) => [key, toValue(item)])) };
}

// With the response's `tensors`, {"$tensor": i} markers become nested lists (byte strings: base64).
function fromValue(value, tensors = []) {
  switch (value?.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'listValue':
      return (value.listValue.values || []).map((item) => fromValue(item, tensors));
    case 'structValue':
      return fromStruct(value.structValue, tensors);
    default:
      return null;
  }
}

function fromStruct(struct, tensors = []) {
  const fields = struct?.fields || {};
  const keys = Object.keys(fields);
  if (keys.length === 1 && keys[0] === '$tensor') return fromTensor(tensors[fromValue(fields.$tensor)]);
  return Object.fromEntries(keys.map((key) => [key, fromValue(fields[key], tensors)]));
}

const ARRAYS = {
  bool: Uint8Array, int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array, uint64: BigUint64Array,
  float32: Float32Array, float64: Float64Array,
};

function fromTensor({ dtype, shape, data }) {
  if (!ARRAYS[dtype]) return data.toString('base64'); // "bytes" (and float16, complex) stay raw
  const copy = Uint8Array.from(data).buffer; // typed arrays need aligned memory; data is little-endian
  return reshape(Array.from(new ARRAYS[dtype](copy), dtype === 'bool' ? Boolean : Number), shape);
}

function reshape(items, shape) {
  if (shape.length === 0) return items[0];
  if (shape.length === 1) return items;
  const size = items.length / shape[0];
  return Array.from({ length: shape[0] }, (_, i) => reshape(items.slice(i * size, (i + 1) * size), shape.slice(1)));
}

function fail(error) {
  console.error(`ERROR ${grpc.status[error.code]} ${error.details}`);
  process.exitCode = 1;
}

function main([address, command, json = '{}']) {
  if (!address || !['invoke', 'stream', 'describe'].includes(command)) {
    console.error("usage: node client.js ADDRESS invoke|stream '<json body>'\n       node client.js ADDRESS describe");
    process.exitCode = 2;
    return;
  }
  let body;
  try {
    body = JSON.parse(json);
  } catch (error) {
    console.error(`invalid JSON body: ${error.message}`);
    process.exitCode = 2;
    return;
  }
  const client = new Graph(address, grpc.credentials.createInsecure());
  const done = () => client.close();
  const request = { body: toValue(body) };

  if (command === 'invoke') {
    client.Invoke(request, (error, response) => {
      if (error) fail(error);
      else console.log(JSON.stringify(fromValue(response.body, response.tensors)));
      done();
    });
  } else if (command === 'stream') {
    const call = client.InvokeStream(request);
    call.on('data', (chunk) => console.log(JSON.stringify(fromValue(chunk.body, chunk.tensors))));
    call.on('error', (error) => { fail(error); done(); });
    call.on('end', done);
  } else {
    client.Describe({}, (error, response) => {
      if (error) fail(error);
      else {
        const { name, streaming, steps, endpoints, spec, mermaid } = response;
        console.log(JSON.stringify({ name, streaming, steps, endpoints, spec: fromStruct(spec), mermaid }, null, 2));
      }
      done();
    });
  }
}

main(process.argv.slice(2));
