// The Vercel AI SDK driven against palaver: the scenarios of tests/clients/test_vercel_ai.py
// in one node process (node starts once per run), one JSON line per scenario on stdout.
//
//   node vercel.mjs http://127.0.0.1:PORT/v1 [SCENARIO ...]     (all of them by default)
//
// Each scenario uses a model name of its own, so the test can tell its upstream requests
// apart, and a conversation of its own where it names one (the X-Conversation-Id header).
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const baseURL = process.argv[2];
const provider = createOpenAI({ baseURL, apiKey: "sk-client" });
const SYSTEM = "Be terse.";

function conversation(id) {
  return { "X-Conversation-Id": id };
}

const weather = (calls, schema = z.object({ city: z.string() })) => ({
  weather: tool({
    description: "The weather in a city",
    inputSchema: schema,
    execute: async ({ city }) => {
      calls.push(city);
      return `sunny in ${city}`;
    },
  }),
});

const clock = (calls) => ({
  clock: tool({
    description: "The time now",
    inputSchema: z.object({}),
    execute: async () => {
      calls.push("clock");
      return "noon";
    },
  }),
});

function steps(result) {
  return result.steps.map((step) => ({
    finishReason: step.finishReason,
    toolCalls: step.toolCalls.map((call) => ({ name: call.toolName, input: call.input })),
    text: step.text,
  }));
}

const scenarios = {
  // plain chat, no conversation: smoke compatibility
  async generate() {
    const result = await generateText({ model: provider.chat("generate"), prompt: "hello" });
    return { text: result.text, finishReason: result.finishReason };
  },

  async stream() {
    const result = streamText({ model: provider.chat("stream"), prompt: "hello there" });
    const parts = [];
    for await (const part of result.textStream) parts.push(part);
    return { text: parts.join(""), parts: parts.length, finishReason: await result.finishReason };
  },

  // a conversation whose client resends its whole transcript each turn (useChat does)
  async transcript() {
    const headers = conversation("vercel-transcript");
    const model = provider.chat("transcript");
    const messages = [{ role: "user", content: "one" }];
    const first = await generateText({ model, system: SYSTEM, messages, headers });
    messages.push(...first.response.messages, { role: "user", content: "two" });
    const second = await generateText({ model, system: SYSTEM, messages, headers });
    return { texts: [first.text, second.text] };
  },

  // the tool loop: each step sends the whole transcript back, arguments re-serialised
  async "tool-loop"() {
    return toolLoop("tool-loop", { tools: weather });
  },

  async "tool-loop-stream"() {
    return toolLoop("tool-loop-stream", { tools: weather, streaming: true });
  },

  // a tool without parameters, which the model calls with empty arguments ("")
  async "empty-arguments"() {
    const questions = ["What time is it?", "And now?"];
    return toolLoop("empty-arguments", { tools: clock, questions });
  },

  // a schema default: the SDK sends back the validated input, the default filled in
  async "schema-default"() {
    const schema = z.object({ city: z.string(), unit: z.enum(["C", "F"]).default("C") });
    return toolLoop("schema-default", { tools: (calls) => weather(calls, schema) });
  },

  // openai("model") means the Responses API in this SDK version (palaver: CONTRACT §9)
  async "responses-default"() {
    const result = await generateText({ model: provider("responses-default"), prompt: "hi" });
    return { text: result.text, finishReason: result.finishReason };
  },

  async "responses-stream"() {
    const result = streamText({ model: provider("responses-stream"), prompt: "hello there" });
    const parts = [];
    for await (const part of result.textStream) parts.push(part);
    return { text: parts.join(""), parts: parts.length, finishReason: await result.finishReason };
  },

  // the whole transcript each turn: with store on, the SDK refers to its earlier answers by
  // id (item_reference) instead of resending them
  async "responses-transcript"() {
    const model = provider("responses-transcript");
    const messages = [];
    const texts = [];
    for (const question of ["one", "two", "three"]) {
      messages.push({ role: "user", content: question });
      const result = await generateText({ model, system: SYSTEM, messages });
      messages.push(...result.response.messages);
      texts.push(result.text);
    }
    return { texts };
  },

  // only the new message each turn, the chain kept by palaver: previousResponseId
  async "responses-chain"() {
    const model = provider("responses-chain");
    const texts = [];
    const ids = [];
    let previousResponseId;
    for (const question of ["one", "two", "three"]) {
      const providerOptions = { openai: { previousResponseId } };
      const result = await generateText({ model, prompt: question, providerOptions });
      previousResponseId = result.providerMetadata.openai.responseId;
      ids.push(previousResponseId);
      texts.push(result.text);
    }
    return { texts, ids };
  },

  // a conversation of palaver's Conversations API holds the history: only the new message
  // each turn (a conversation appends every input it is sent, as at OpenAI)
  async "responses-conversation"() {
    const created = await fetch(`${baseURL}/conversations`, {
      method: "POST",
      headers: { Authorization: "Bearer sk-client", "Content-Type": "application/json" },
      body: "{}",
    });
    const { id } = await created.json();
    const model = provider("responses-conversation");
    const providerOptions = { openai: { conversation: id } };
    const texts = [];
    for (const question of ["one", "two", "three"]) {
      const result = await generateText({ model, system: SYSTEM, prompt: question, providerOptions });
      texts.push(result.text);
    }
    return { texts, conversation: id };
  },

  async "responses-tool-loop"() {
    return toolLoop("responses-tool-loop", { tools: weather, model: provider });
  },

  async "responses-tool-loop-stream"() {
    return toolLoop("responses-tool-loop-stream", {
      tools: weather,
      model: provider,
      streaming: true,
    });
  },
};

async function toolLoop(
  name,
  {
    tools,
    streaming = false,
    questions = ["Weather in Paris?", "And tomorrow?"],
    model: make = provider.chat,
  },
) {
  const headers = conversation(`vercel-${name}`);
  const model = make(name);
  const calls = [];
  const options = { model, system: SYSTEM, tools: tools(calls), stopWhen: stepCountIs(4), headers };
  const run = async (messages) => {
    if (!streaming) return generateText({ ...options, messages });
    let failure = null; // streamText reports errors here, not by throwing
    const result = streamText({ ...options, messages, onError: ({ error }) => (failure = error) });
    await result.consumeStream();
    if (failure) throw failure;
    return { text: await result.text, steps: await result.steps, response: await result.response };
  };
  const messages = [];
  const texts = [];
  const allSteps = [];
  for (const question of questions) {
    // each turn as an app holding the transcript sends it: everything so far and a question
    messages.push({ role: "user", content: question });
    const result = await run(messages);
    messages.push(...result.response.messages);
    texts.push(result.text);
    allSteps.push(steps(result));
  }
  return { texts, steps: allSteps, calls };
}

const wanted = process.argv.slice(3);
for (const [name, scenario] of Object.entries(scenarios)) {
  if (wanted.length && !wanted.includes(name)) continue;
  let line;
  try {
    line = { scenario: name, ok: true, ...(await scenario()) };
  } catch (error) {
    const status = error?.statusCode ?? null;
    line = { scenario: name, ok: false, error: String(error?.message ?? error), status };
  }
  process.stdout.write(JSON.stringify(line) + "\n");
}
