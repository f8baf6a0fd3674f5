// The optional API key (EMOTION_API_KEY on the server). Kept in this browser's localStorage, sent as an
// X-API-Key header on uploads and as a WebSocket subprotocol ("key.<key>") on the live stream: browsers
// cannot set headers on a WebSocket. The server answers with the "emotion" subprotocol, never the key.

const STORAGE_KEY = 'emotion-api-key';

export function apiKey() {
  try {
    return localStorage.getItem(STORAGE_KEY) || '';
  } catch {
    return ''; // storage disabled: no key
  }
}

export function authHeaders() {
  const key = apiKey();
  return key ? { 'X-API-Key': key } : {};
}

export function socketProtocols() {
  const key = apiKey();
  return key ? ['emotion', `key.${key}`] : [];
}

// The key form in the footer: shows whether a key is stored, saves or forgets it.
export function setupAccessForm() {
  const form = document.getElementById('access-form');
  const input = document.getElementById('api-key');
  const status = document.getElementById('access-status');
  if (!form || !input) return;
  const show = () => {
    if (status) status.textContent = apiKey() ? 'A key is stored in this browser.' : 'No key stored.';
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      if (key) localStorage.setItem(STORAGE_KEY, key);
      else localStorage.removeItem(STORAGE_KEY);
    } catch {
      if (status) status.textContent = 'This browser does not allow storing the key.';
      return;
    }
    input.value = '';
    show();
  });
  show();
}
