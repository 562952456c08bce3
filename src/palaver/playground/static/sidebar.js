// The caller's conversations, newest first, a page at a time: open, rename, delete.
export function titleOf(info) {
  return info.metadata?.title || info.id;
}

export class Sidebar {
  constructor(api, { open, removed, renamed, failed }) {
    this.api = api;
    this.on = { open, removed, renamed, failed };
    this.list = document.querySelector("#conversations");
    this.more = document.querySelector("#more");
    this.none = document.querySelector("#no-conversations");
    this.last = null; // the id a next page starts after
    this.current = null;
    this.close = () => {};
    this.more.addEventListener("click", () => this.load(this.last));
  }

  // The first page (or the next one, after `after`).
  async load(after = null) {
    let page;
    try {
      page = await this.api.conversations(after);
    } catch (error) {
      if (error.status !== 401) this.on.failed(error); // a 401 asks for the key
      return;
    }
    if (!after) this.list.replaceChildren();
    for (const info of page.data) this.list.append(this.entry(info));
    this.last = page.data.length ? page.data[page.data.length - 1].id : null;
    this.more.hidden = !page.has_more;
    this.none.hidden = this.list.children.length > 0;
    this.highlight(this.current);
  }

  highlight(id) {
    this.current = id;
    for (const item of this.list.children) {
      item.classList.toggle("current", item.dataset.id === id);
    }
  }

  entry(info) {
    const item = document.createElement("li");
    item.dataset.id = info.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = titleOf(info);
    const when = document.createElement("time");
    when.dateTime = new Date(info.created_at * 1000).toISOString();
    when.textContent = new Date(info.created_at * 1000).toLocaleString();
    open.append(title, when);
    open.addEventListener("click", () => {
      this.on.open(info);
      this.close();
    });
    const rename = button("rename", "✎", "Rename");
    rename.addEventListener("click", () => this.rename(item, info));
    const remove = button("delete", "✕", "Delete");
    remove.addEventListener("click", () => this.confirmRemove(item, info, remove));
    item.append(open, rename, remove);
    return item;
  }

  rename(item, info) {
    const field = document.createElement("input");
    field.className = "rename-field";
    field.value = titleOf(info);
    field.setAttribute("aria-label", "New name");
    const name = item.querySelector(".name");
    name.replaceWith(field);
    field.focus();
    field.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = field.value.trim();
      if (save && title && title !== titleOf(info)) {
        try {
          Object.assign(info, await this.api.rename(info.id, title));
          name.textContent = titleOf(info);
          this.on.renamed(info);
        } catch (error) {
          this.on.failed(error);
        }
      }
      field.replaceWith(name);
    };
    field.addEventListener("click", (event) => event.stopPropagation());
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    field.addEventListener("blur", () => finish(true));
  }

  // A first click asks, a second one deletes.
  async confirmRemove(item, info, remove) {
    if (!remove.classList.contains("confirm")) {
      remove.classList.add("confirm");
      remove.textContent = "Delete?";
      setTimeout(() => {
        remove.classList.remove("confirm");
        remove.textContent = "✕";
      }, 4000);
      return;
    }
    try {
      await this.api.remove(info.id);
    } catch (error) {
      this.on.failed(error);
      return;
    }
    item.remove();
    this.none.hidden = this.list.children.length > 0;
    this.on.removed(info.id);
  }
}

function button(kind, text, label) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = kind;
  element.textContent = text;
  element.title = label;
  element.setAttribute("aria-label", label);
  return element;
}
