"""The demo's page: four Gradio tabs laid over `handlers.DemoService`.

Gradio is imported here and only here, when the demo starts (it is the optional `demo` extra).  What
happens to a photo, and the Gradio settings chosen for it:

* Gradio writes every upload to its cache folder (`GRADIO_TEMP_DIR`, by default `<system temp>/gradio`)
  before any Python code sees it, and the annotated photos it sends back too (to serve them).  This
  package writes no copy of either.
* As soon as a file arrives, its bytes are read (`type="binary"`) into the page session's memory
  (`gr.State`), and the buttons work from there, decoding in memory.  So Gradio's copies are needed
  only for a moment: `delete_cache=(60, CACHE_LIFETIME_S)` has Gradio delete them once they are
  `CACHE_LIFETIME_S` old (checked every minute), and all of them when the server stops (Ctrl+C, or
  SIGTERM, which `frtf demo` turns into the same clean stop).  Empty hashed sub-folders remain.
  Reading the bytes at upload time is also what keeps a button working after that deletion (a `gr.File`
  given straight to a button handler fails in Gradio once its cached file is gone).
* The bytes held in memory are dropped `PHOTO_MEMORY_S` after the upload (`gr.State(time_to_live)`),
  or when the tab is closed or reloaded; a button pressed after that asks for the photo again.
* Uploads over `MAX_UPLOAD` are refused by Gradio.  Inputs are `gr.File`, not `gr.Image`: `gr.Image`
  decodes uploads with Pillow before any handler runs, so a file that is not an image failed in Gradio
  with a bare "Error" instead of this package's message, and EXIF and huge-photo handling would be
  Pillow's rather than `faces.images`'.
* Telemetry and Gradio's version check are off (`analytics_enabled=False`): they phone home.
"""

from __future__ import annotations

from face_recognition_tf.demo.drawing import crop_strip
from face_recognition_tf.demo.handlers import TOP_K, people_text
from face_recognition_tf.errors import FaceRecognitionError

CACHE_LIFETIME_S = 120
PHOTO_MEMORY_S = 900
MAX_UPLOAD = "50mb"
TITLE = "Face recognition demo"
INSTALL_HINT = "pip install 'face_recognition_tf[demo]'"
IDENTIFY_HEADERS = ["face", "rank", "name", "similarity", "decision"]
PEOPLE_HEADERS = ["name", "photos"]
FILE_HEIGHT = 150
PHOTO_HEIGHT = 420
CROP_HEIGHT = 170
IMAGE_BUTTONS = ["download", "fullscreen"]  # not "share": it offers to upload the photo to Hugging Face
CSS = """
#verify-result, #identify-result, #enroll-result { min-height: 2.5em; }
.frtf-intro p { margin: 0.2em 0; }
.frtf-yes { color: #1e963c; }
.frtf-no { color: #d22d2d; }
"""


def import_gradio():
    """Gradio, or a one-line error saying how to install it."""
    try:
        import gradio
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise FaceRecognitionError(f"gradio cannot be imported ({exc}); reinstall it: {INSTALL_HINT}") from None
        raise FaceRecognitionError(f"the web demo needs gradio, which is not installed: {INSTALL_HINT}") from None
    except ImportError as exc:
        raise FaceRecognitionError(f"gradio cannot be imported ({exc}); reinstall it: {INSTALL_HINT}") from None
    return gradio


def intro_markdown(service) -> str:
    return (f"## {TITLE}\n\n"
            f"Model **{service.recognizer.model_name}** ({service.embedding_size}-D embeddings), "
            f"{service.threshold_text()}. {people_text(len(service.store))} enrolled. "
            "Photos are analysed in memory and never stored: only the embeddings of enrolled people are kept.")


def build_app(service):
    """The gr.Blocks page for `service`; serve it with `launch`."""
    gr = import_gradio()

    def people_update():
        rows = service.people_rows()
        names = [row[0] for row in rows]
        return rows, gr.Dropdown(choices=names, value=None), service.model_markdown(), intro_markdown(service)

    def on_verify(photo_a, photo_b):
        out = service.verify(photo_a, photo_b)
        return out.message, crop_strip(out.crops, ["A", "B"]) if out.ok else None, *out.photos

    def on_identify(photo):
        out = service.identify(photo)
        return out.message, out.photo, out.table

    def on_enroll(name, photos):
        out = service.enroll(name, photos)
        cleared = (gr.Textbox(value=""), gr.File(value=None)) if out.ok else (gr.skip(), gr.skip())
        return (out.message, out.crops, *cleared, *people_update())

    def on_remove(name):
        out = service.remove(name)
        return (out.message, None, *people_update())  # the crops of the last enrollment no longer apply

    def photo_input(label, elem_id, **kwargs):
        """A file input and the session memory holding its bytes from the moment it is uploaded."""
        upload = gr.File(label=label, type="binary", height=FILE_HEIGHT, elem_id=elem_id, **kwargs)
        held = gr.State(time_to_live=PHOTO_MEMORY_S)
        upload.change(lambda data: data, upload, held, queue=False, show_progress="hidden")
        return upload, held

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(60, CACHE_LIFETIME_S)) as app:
        intro = gr.Markdown(intro_markdown(service), elem_classes="frtf-intro", elem_id="intro")
        with gr.Tab("Verify", id="verify"):
            gr.Markdown("Are the people in two photos the same person? The main face of each photo is "
                        "compared; boxes and landmarks show what was found.")
            with gr.Row():
                _, photo_a = photo_input("Photo A", "verify-a")
                _, photo_b = photo_input("Photo B", "verify-b")
            verify_button = gr.Button("Compare", variant="primary", elem_id="verify-button")
            with gr.Row(equal_height=True):
                verify_result = gr.Markdown(elem_id="verify-result")
                crops = gr.Image(label="Aligned crops compared (A, B)", interactive=False, height=CROP_HEIGHT,
                                 buttons=["download"], elem_id="verify-crops")
            with gr.Row():
                shown_a = gr.Image(label="Photo A: faces found", interactive=False, height=PHOTO_HEIGHT,
                                   buttons=IMAGE_BUTTONS, elem_id="verify-photo-a")
                shown_b = gr.Image(label="Photo B: faces found", interactive=False, height=PHOTO_HEIGHT,
                                   buttons=IMAGE_BUTTONS, elem_id="verify-photo-b")
        with gr.Tab("Identify", id="identify"):
            gr.Markdown("Who is in a photo? Every face is compared with the enrolled people; below the "
                        "threshold a face is *unknown*.")
            _, photo = photo_input("Photo", "identify-photo")
            identify_button = gr.Button("Identify", variant="primary", elem_id="identify-button")
            identify_result = gr.Markdown(elem_id="identify-result")
            shown = gr.Image(label="Faces found", interactive=False, height=PHOTO_HEIGHT + 100, buttons=IMAGE_BUTTONS,
                             elem_id="identify-shown")
            table = gr.Dataframe(headers=IDENTIFY_HEADERS, label=f"Closest enrolled people per face (top {TOP_K})",
                                 interactive=False, elem_id="identify-table")
        with gr.Tab("Enroll", id="enroll"):
            gr.Markdown(f"Add a person from one or more photos (the main face of each is used). People are "
                        f"stored in `{service.store.path}` and survive a restart.")
            with gr.Row():
                name = gr.Textbox(label="Name", placeholder="e.g. Grace Hopper", elem_id="enroll-name")
                photos, held_photos = photo_input("Photos of this person", "enroll-photos", file_count="multiple")
            enroll_button = gr.Button("Enroll", variant="primary", elem_id="enroll-button")
            enroll_result = gr.Markdown(elem_id="enroll-result")
            enrolled_crops = gr.Image(label="Faces enrolled (aligned)", interactive=False, height=CROP_HEIGHT,
                                      buttons=["download"], elem_id="enroll-crops")
            people_table = gr.Dataframe(value=service.people_rows(), headers=PEOPLE_HEADERS, label="Enrolled people",
                                        interactive=False, elem_id="people-table")
            with gr.Row(equal_height=False):
                who = gr.Dropdown(choices=[row[0] for row in service.people_rows()], label="Person to remove",
                                  value=None, scale=3, elem_id="remove-name")
                remove_button = gr.Button("Remove", variant="stop", scale=1, elem_id="remove-button")
        with gr.Tab("Model", id="model"):
            model_card = gr.Markdown(service.model_markdown(), elem_id="model-card")

        verify_button.click(on_verify, [photo_a, photo_b], [verify_result, crops, shown_a, shown_b])
        identify_button.click(on_identify, [photo], [identify_result, shown, table])
        listing = [people_table, who, model_card, intro]
        enroll_button.click(on_enroll, [name, held_photos], [enroll_result, enrolled_crops, name, photos, *listing])
        remove_button.click(on_remove, [who], [enroll_result, enrolled_crops, *listing])
        app.load(people_update, None, listing)  # a reloaded page shows who is enrolled now
    return app


def launch(app, *, host: str, port: int, block: bool = True):
    """Serve the page on host:port; `block=False` returns once it is up (tests)."""
    gr = import_gradio()
    try:
        app.launch(server_name=host, server_port=int(port), share=False, inbrowser=False, show_error=True,
                   max_file_size=MAX_UPLOAD, ssr_mode=False, prevent_thread_lock=not block, quiet=False,
                   theme=gr.themes.Soft(), css=CSS)
    except OSError as exc:  # taken between the start-up check and now
        reason = str(exc).split(". ")[0]
        raise FaceRecognitionError(f"cannot serve on {host}:{port} ({reason}); choose another --port") from None
