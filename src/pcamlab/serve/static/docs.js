// The API page: lists the routes of /openapi.json as plain HTML (no CDN, no framework).
"use strict";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf) return schema.anyOf.map(schemaName).join(" | ");
  if (schema.type === "array") return schemaName(schema.items) + "[]";
  return schema.type || "";
}

function render(spec) {
  const routes = document.getElementById("routes");
  routes.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths || {})) {
    for (const [method, operation] of Object.entries(methods)) {
      const section = element("section");
      section.appendChild(element("h2", method.toUpperCase() + " " + path));
      if (operation.summary) section.appendChild(element("p", operation.summary));
      if (operation.description) section.appendChild(element("p", operation.description));
      const fields = [];
      for (const parameter of operation.parameters || []) {
        fields.push(parameter.name + " (" + parameter.in + ", " + schemaName(parameter.schema) + ")"
                    + (parameter.required ? ", required" : ""));
      }
      const body = operation.requestBody && operation.requestBody.content;
      if (body) {
        for (const [kind, content] of Object.entries(body)) fields.push("body " + kind + ": " + schemaName(content.schema));
      }
      if (fields.length) {
        const list = element("ul");
        for (const field of fields) list.appendChild(element("li", field));
        section.appendChild(list);
      }
      const answers = Object.entries(operation.responses || {}).map(([code, answer]) => code + " " + (answer.description || ""));
      section.appendChild(element("p", "Answers: " + answers.join("; "), "answers"));
      routes.appendChild(section);
    }
  }
}

fetch("/openapi.json").then((response) => response.json()).then(render).catch((error) => {
  document.getElementById("routes").textContent = "cannot read /openapi.json: " + error;
});
