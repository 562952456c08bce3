// The official openai Node SDK driven against palaver: the scenarios of
// tests/clients/test_openai_node.py in one node process, one JSON line per scenario.
//
//   node openai.mjs http://127.0.0.1:PORT/v1 [SCENARIO ...]     (all of them by default)
//
// Each scenario uses a model name of its own, so the test can tell its upstream requests apart.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-client", maxRetries: 0 });
const SYSTEM = "Be terse.";
const PARAMETERS = {
  type: "object",
  properties: { city: { type: "string" } },
  required: ["city"],
};
const WEATHER = { type: "function", name: "weather", description: "The weather", parameters: PARAMETERS, strict: false };
const CHAT_WEATHER = {
  type: "function",
  function: { name: "weather", description: "The weather", parameters: PARAMETERS },
};
const QUESTIONS = ["one", "two", "three"];

const scenarios = {
  async "chat-plain"() {
    const reply = await client.chat.completions.create({
      model: "chat-plain",
      messages: [{ role: "user", content: "hello" }],
    });
    return { text: reply.choices[0].message.content };
  },

  async "chat-stream"() {
    const stream = await client.chat.completions.create({
      model: "chat-stream",
      messages: [{ role: "user", content: "hello" }],
      stream: true,
    });
    const parts = [];
    for await (const chunk of stream) parts.push(chunk.choices[0]?.delta?.content ?? "");
    return { text: parts.join(""), chunks: parts.length };
  },

  // palaver's chat extension: only the new message each turn, the conversation named
  async "chat-turns"() {
    const texts = [];
    for (const question of QUESTIONS) {
      const reply = await client.chat.completions.create({
        model: "chat-turns",
        messages: [
          { role: "system", content: SYSTEM },
          { role: "user", content: question },
        ],
        conversation: "node-chat",
      });
      texts.push(reply.choices[0].message.content);
    }
    return { texts };
  },

  async "chat-tools"() {
    const messages = [
      { role: "system", content: SYSTEM },
      { role: "user", content: "Weather in Paris?" },
    ];
    const first = await client.chat.completions.create({ model: "chat-tools", messages, tools: [CHAT_WEATHER] });
    const message = first.choices[0].message;
    messages.push(message);
    for (const call of message.tool_calls) {
      const { city } = JSON.parse(call.function.arguments);
      messages.push({ role: "tool", tool_call_id: call.id, content: `sunny in ${city}` });
    }
    const second = await client.chat.completions.create({ model: "chat-tools", messages, tools: [CHAT_WEATHER] });
    return { finish: first.choices[0].finish_reason, text: second.choices[0].message.content };
  },

  async "responses-plain"() {
    const response = await client.responses.create({ model: "responses-plain", input: "hello" });
    const again = await client.responses.retrieve(response.id);
    return { text: response.output_text, status: response.status, retrieved: again.output_text };
  },

  // the SDK's stream helper assembles the final response from the events
  async "responses-stream"() {
    const stream = client.responses.stream({ model: "responses-stream", input: "hello" });
    const types = [];
    const deltas = [];
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") deltas.push(event.delta);
    }
    const final = await stream.finalResponse();
    return { text: final.output_text, deltas: deltas.join(""), first: types[0], last: types.at(-1) };
  },

  async "responses-chain"() {
    const texts = [];
    let previous;
    for (const question of QUESTIONS) {
      const response = await client.responses.create({
        model: "responses-chain",
        input: question,
        previous_response_id: previous,
      });
      texts.push(response.output_text);
      previous = response.id;
    }
    return { texts };
  },

  async "responses-chain-stream"() {
    const texts = [];
    let previous;
    for (const question of QUESTIONS) {
      const stream = client.responses.stream({
        model: "responses-chain-stream",
        input: question,
        previous_response_id: previous,
      });
      const response = await stream.finalResponse();
      texts.push(response.output_text);
      previous = response.id;
    }
    return { texts };
  },

  async "responses-conversation"() {
    const conversation = await client.conversations.create();
    const texts = [];
    for (const question of QUESTIONS) {
      const response = await client.responses.create({
        model: "responses-conversation",
        input: question,
        conversation: conversation.id,
      });
      texts.push(response.output_text);
    }
    return { texts, conversation: conversation.id };
  },

  async "responses-tools"() {
    const options = { model: "responses-tools", tools: [WEATHER], instructions: SYSTEM };
    const first = await client.responses.create({ ...options, input: "Weather in Paris?" });
    const calls = first.output.filter((item) => item.type === "function_call");
    const results = calls.map((call) => ({
      type: "function_call_output",
      call_id: call.call_id,
      output: `sunny in ${JSON.parse(call.arguments).city}`,
    }));
    const second = await client.responses.create({ ...options, input: results, previous_response_id: first.id });
    return { calls: calls.map((c) => [c.name, c.call_id]), text: second.output_text };
  },
};

const wanted = process.argv.slice(3);
for (const [name, scenario] of Object.entries(scenarios)) {
  if (wanted.length && !wanted.includes(name)) continue;
  let line;
  try {
    line = { scenario: name, ok: true, ...(await scenario()) };
  } catch (error) {
    line = { scenario: name, ok: false, error: String(error?.message ?? error), status: error?.status ?? null };
  }
  process.stdout.write(JSON.stringify(line) + "\n");
}
