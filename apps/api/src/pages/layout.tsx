/** @jsxImportSource hono/jsx */
// The pages' shared parts: the document around every page, its one stylesheet (inline, under the CSP's nonce),
// and the form pieces. No JavaScript anywhere: every page works with scripts off.
import type { Child } from "hono/jsx";

const STYLE = `
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1b1f;background:#f5f5f7}
main{max-width:28rem;margin:4rem auto;padding:2rem;background:#fff;border:1px solid #d8d8de;border-radius:.75rem}
h1{font-size:1.4rem;margin:0 0 1rem}
p{margin:.5rem 0 1rem}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=email],input[type=password]{width:100%;padding:.6rem .7rem;font:inherit;border:1px solid #8a8a95;border-radius:.4rem}
button{margin-top:1.25rem;padding:.6rem 1.1rem;font:inherit;font-weight:600;color:#fff;background:#2a4bd7;border:0;border-radius:.4rem;cursor:pointer}
button.secondary{color:#2a4bd7;background:#fff;border:1px solid #2a4bd7}
input:focus-visible,button:focus-visible,a:focus-visible{outline:3px solid #f0a500;outline-offset:2px}
.error{color:#a3001b;background:#fdecef;border:1px solid #e8a3ae;border-radius:.4rem;padding:.6rem .8rem}
.error ul{margin:.25rem 0 0;padding-left:1.2rem}
.ok{color:#0b5e2a;background:#e9f7ee;border:1px solid #9fd3b2;border-radius:.4rem;padding:.6rem .8rem}
.hint{color:#55555f;font-size:.9rem;margin:.25rem 0 0}
`;

export function Page(props: { title: string; nonce: string | undefined; children: Child }) {
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="robots" content="noindex" />
        <title>{props.title}</title>
        {/* A constant: nothing from the request is in it. */}
        <style nonce={props.nonce} dangerouslySetInnerHTML={{ __html: STYLE }} />
      </head>
      <body>
        <main>
          <h1>{props.title}</h1>
          {props.children}
        </main>
      </body>
    </html>
  );
}

/** Why the last submission was refused: a sentence, and the per-field reasons when there are any. */
export function Problem(props: { message: string; reasons?: string[] | undefined }) {
  return (
    <div class="error" role="alert" id="problem">
      {props.message}
      {props.reasons && props.reasons.length > 0 ? (
        <ul>
          {props.reasons.map((reason) => (
            <li>{reason}</li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

/** A POST form to this origin carrying the CSRF token (and the link's token when there is one). */
export function Form(props: { action: string; csrf: string; token?: string; children: Child }) {
  return (
    <form method="post" action={props.action}>
      <input type="hidden" name="csrf" value={props.csrf} />
      {props.token === undefined ? null : <input type="hidden" name="token" value={props.token} />}
      {props.children}
    </form>
  );
}

/** A password field with its label (and a hint tied to it for screen readers). */
export function PasswordField(props: {
  name: string;
  label: string;
  autocomplete: "current-password" | "new-password";
  hint?: string;
}) {
  const hintId = `${props.name}-hint`;
  return (
    <>
      <label for={props.name}>{props.label}</label>
      <input
        type="password"
        id={props.name}
        name={props.name}
        required
        maxlength={1024}
        autocomplete={props.autocomplete}
        aria-describedby={props.hint ? hintId : undefined}
      />
      {props.hint ? (
        <p class="hint" id={hintId}>
          {props.hint}
        </p>
      ) : null}
    </>
  );
}
