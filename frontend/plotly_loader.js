// plotly.js is 4.6 MB: load it only on pages that draw charts, and start early so it parses while the API
// answers. Served by the backend from the installed plotly Python package (no CDN).

let loading = null;

/** Resolves to window.Plotly once /vendor/plotly.min.js has run. */
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/vendor/plotly.min.js';
      script.async = true;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        loading = null;
        script.remove();
        reject(new Error('plotly.js did not load from /vendor/plotly.min.js; is the plotly package installed on the server?'));
      };
      document.head.append(script);
    });
  }
  return loading;
}
